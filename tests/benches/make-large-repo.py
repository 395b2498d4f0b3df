#!/usr/bin/env python3
"""Makes a large git repository for the clone cache benchmark, here, offline.

    make-large-repo.py BARE_REPO [--commits 20000] [--megabytes 200] [--files 1000]
    make-large-repo.py BARE_REPO --extend BRANCH --commits 2

The first form makes a bare repository whose `main` has COMMITS commits, each
changing one of FILES files to new random (incompressible) bytes, about
MEGABYTES of history in all, and a `feature` branch one commit past `main`
(the pull request a review checks out). The second adds COMMITS commits to
BRANCH. Everything goes through `git fast-import`, seeded, so two runs make
the same history; nothing is downloaded.
"""

import argparse
import random
import subprocess
import sys

AUTHOR = b"Berth Bench <bench@berth.invalid>"


def commit(out, rng, branch, parent, path, size, when, message):
    data = rng.randbytes(size)
    message = message.encode()
    out.write(b"commit refs/heads/%s\n" % branch.encode())
    out.write(b"committer %s %d +0000\n" % (AUTHOR, when))
    out.write(b"data %d\n%s\n" % (len(message), message))
    if parent:
        out.write(b"from %s\n" % parent.encode())
    out.write(b"M 100644 inline %s\n" % path.encode())
    out.write(b"data %d\n" % len(data))
    out.write(data)
    out.write(b"\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo")
    parser.add_argument("--commits", type=int, default=20000)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--extend", metavar="BRANCH")
    args = parser.parse_args()

    extending = args.extend is not None
    if not extending:
        subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", args.repo], check=True)
    # An extension's commits are the size of an ordinary one of the big history.
    size = 10 * 1024 if extending else max(1, args.megabytes * 1024 * 1024 // max(1, args.commits))
    rng = random.Random("berth-large-repo")
    tip = None
    if extending:
        # Fresh content for each extension: seeded by the branch's current tip.
        tip = subprocess.run(["git", "--git-dir", args.repo, "rev-parse", args.extend],
                             check=True, capture_output=True, text=True).stdout.strip()
        rng = random.Random(tip)
    importer = subprocess.Popen(["git", "--git-dir", args.repo, "fast-import", "--quiet"], stdin=subprocess.PIPE)
    out = importer.stdin
    start = 1_700_000_000
    if extending:
        for i in range(args.commits):
            parent = tip if i == 0 else None
            commit(out, rng, args.extend, parent, "extra/change-%d.bin" % rng.randrange(1 << 30), size,
                   start + 10_000_000 + i, "another change %d" % i)
    else:
        for i in range(args.commits):
            path = "src/part-%02d/file-%04d.bin" % (i % 50, rng.randrange(args.files))
            commit(out, rng, "main", None, path, size, start + i, "change %d" % i)
        commit(out, rng, "feature", "refs/heads/main", "feature/change.bin", size, start + args.commits,
               "the pull request's change")
    out.close()
    if importer.wait() != 0:
        sys.exit("git fast-import failed")


if __name__ == "__main__":
    main()
