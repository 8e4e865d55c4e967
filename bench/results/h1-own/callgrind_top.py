#!/usr/bin/env python3
"""Reads a callgrind dump (callgrind_ab.sh makes them) without
callgrind_annotate: exclusive instructions per function, per request.

  callgrind_top.py FILE REQUESTS [TOP]            where the instructions go
  callgrind_top.py FILE REQUESTS --callers NAME   who calls functions matching NAME
                                                  (inclusive cost of those calls)
"""
import collections
import re
import sys


def read(path, callers_of=None):
    names = {}

    def name(tok):
        m = re.match(r'\((\d+)\)(?: (.*))?', tok)
        if not m:
            return tok
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), m.group(1))

    own = collections.Counter()
    callers = collections.Counter()
    fn = cfn = None
    call_line = False
    for line in open(path, errors='replace'):
        line = line.rstrip('\n')
        if line.startswith('fn='):
            fn = name(line[3:])
        elif line.startswith('cfn='):
            cfn = name(line[4:])
        elif line.startswith(('cfi=', 'cfl=', 'cob=')):
            pass
        elif line.startswith('calls='):
            call_line = True
        elif line and (line[0].isdigit() or line[0] in '+-*'):
            parts = line.split()
            if len(parts) < 2:
                continue
            if call_line:
                call_line = False
                if callers_of and cfn and callers_of in cfn:
                    callers[fn] += int(parts[1])
            else:
                own[fn] += int(parts[1])
    return own, callers


def main():
    path, n = sys.argv[1], int(sys.argv[2])
    if len(sys.argv) > 4 and sys.argv[3] == '--callers':
        _, callers = read(path, sys.argv[4])
        for f, c in callers.most_common(12):
            print(f'{c / n:7.0f}/req  {f[:160]}')
        return
    own, _ = read(path)
    total = sum(own.values())
    print(f'total {total} instructions, {total / n:.0f} per request')
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    for f, c in own.most_common(top):
        print(f'{c / total * 100:5.1f}%  {c / n:7.0f}/req  {f[:150]}')


main()
