"""Writes a benchmark's latest results into benches/README.md.

    python3 benches/lib/readme.py NAME HEADING COMMAND BODY_FILE

replaces everything between `<!-- NAME:begin -->` and `<!-- NAME:end -->`
with a line naming the date, machine and COMMAND, then BODY_FILE's Markdown.
A README without the markers gets them appended under `## HEADING`.
"""
import datetime
import os
import platform
import re
import sys

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return "%s (%d cores, %s, %.1f GB RAM, Linux %s)" % (
        platform.node() or "?", os.cpu_count(), cpu, mem_kb / 1048576, platform.release())


def put_section(path, begin, end, block, after=None):
    """Puts `block` (its own `begin` and `end` markers included) where the
    file at `path` has those markers; without them, right after the marker
    `after` if given and present, else at the end."""
    text = open(path).read()
    if begin in text and end in text:
        a, b = text.index(begin), text.index(end) + len(end)
        text = text[:a] + block + text[b:]
    elif after and after in text:
        i = text.index(after) + len(after)
        text = text[:i] + "\n\n" + block + text[i:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as fh:
        fh.write(text if text.endswith("\n") else text + "\n")


def main():
    name, heading, command, body_file = sys.argv[1:5]
    command = command.strip()
    body = open(body_file).read().strip()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = "Run %s on %s, command `%s`." % (now, machine(), command)
    begin, end = "<!-- %s:begin -->" % name, "<!-- %s:end -->" % name
    block = "%s\n%s\n\n%s\n%s" % (begin, head, body, end)
    text = open(README).read()
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## %s\n\n%s\n" % (heading, block)
    with open(README, "w") as f:
        f.write(text)
    print("results written to benches/README.md (%s)" % name)


if __name__ == "__main__":
    main()
