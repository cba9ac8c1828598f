"""Hosts: the aiohttp server (`http`), AWS Lambda and Google Cloud Functions. Each turns
its platform's request into a `receiver.door.InboundRequest` for `core.handle` and the
`Outcome` back, nothing more; a door is a sender's protocol, a host a place to run."""
