"""``segfuse recover DIR``: a killed run's partial outputs -> a valid recording and overlay."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recover", help="turn what a killed run left in its output folder into a valid recording",
                       description="After a SIGKILL or a power loss, OUT/.recording.partial-<pid>/ holds an MCAP "
                                   "without summary or footer. This rewrites every complete frame (every whole, "
                                   "CRC-valid chunk) into OUT/recording (rosbag2, MCAP, metadata.yaml), joins the "
                                   "closed overlay segments into OUT/overlay.mp4, and writes OUT/recovered.json.")
    p.add_argument("out", help="the run's output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/recording")
    p.set_defaults(func=recover)


def recover(args: argparse.Namespace) -> int:
    import json

    from pipeline.outputs import recover as do_recover

    result = do_recover(args.out, overwrite=args.overwrite)
    print(json.dumps(result, indent=1))
    return 0
