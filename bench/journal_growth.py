"""The journal under steady load, round after round: does its cost or its WAL grow?

One receiver in the default configuration (journal and propagation checks on, `memory`
provider, envelope and user token verified) gets `throughput.py`'s load for `--rounds`
rounds of `--seconds`; after each, the round's requests/s, the server's CPU per request
and the sizes of the journal's files. Under steady writes a checkpoint beside the writer
never catches up, so without one that finishes holding the writer the WAL grows without
bound (it reached 1.4 GB in a minute) and every page read searches a longer WAL index.
The last line is the goal: the largest WAL stays within `receiver.sqlite.WAL_SIZE_LIMIT`.

    python bench/journal_growth.py [--rounds 12] [--seconds 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from harness import Keys, free_port, jwks_server, process, receiver, receiver_config, tree_cpu
from throughput import SignedLoad, add_load_arguments

from receiver.sqlite import WAL_SIZE_LIMIT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    add_load_arguments(parser, seconds=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        keys = Keys(folder)
        load = SignedLoad.from_args(folder, keys, args)
        largest_wal = 0
        with jwks_server(keys.user_public) as jwks_url:
            port = free_port()
            config = receiver_config(folder, keys, jwks_url, port, journal=True, propagation=True)
            url = f"http://127.0.0.1:{port}/callback"
            with process(receiver(config), url) as server:
                for round_ in range(1, args.rounds + 1):
                    used = tree_cpu(server.pid)
                    rps = load(url)[0]
                    used = tree_cpu(server.pid) - used
                    files = {p.name: p.stat().st_size for p in folder.glob("journal-*.sqlite3*")}
                    wal = sum(size for name, size in files.items() if name.endswith("-wal"))
                    db = sum(size for name, size in files.items() if name.endswith(".sqlite3"))
                    largest_wal = max(largest_wal, wal)
                    print(
                        f"  round {round_:>2}  {rps:>6.0f} req/s"
                        f"  CPU {used / (rps * args.seconds) * 1e6:4.0f} µs/request"
                        f"  journal {db / 2**20:6.1f} MiB  WAL {wal / 2**20:6.1f} MiB",
                        flush=True,
                    )
    print(f"load: {load.generator}, {args.connections} connections, {args.seconds:g} s rounds")
    print(
        f"largest WAL: {largest_wal / 2**20:.1f} MiB"
        f" (bound {WAL_SIZE_LIMIT / 2**20:.0f} MiB): "
        + ("within" if largest_wal <= WAL_SIZE_LIMIT else "OVER")
    )


if __name__ == "__main__":
    main()
