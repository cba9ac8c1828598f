"""The hosts' former home (`receiver.hosts`): handler paths of deployments made before
the rename keep working (`receiver.entrypoints.aws_lambda.handler`, ...)."""
