#!/usr/bin/env python3
"""make_labels.py OUTDIR
Combines OUTDIR/scenarios.jsonl and OUTDIR/steps.jsonl (written by lib/scenarios.sh while
the pcaps were recorded) into OUTDIR/labels.json: per scenario its pcap, time window and
labelled steps (UTC window, source IP, account, technique, MITRE id, command, exit code,
whether the tool's success text appeared, note).  Times are taken on the clock that stamps
the packets.  Adapted from the reference lab's make_labels.py."""
import json
import os
import re
import sys

out = sys.argv[1]


def load(name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


scen = sorted(load('scenarios.jsonl'), key=lambda s: s['key'])
steps = sorted(load('steps.jsonl'), key=lambda s: (s['scenario'], s['seq']))
sid = ''
try:
    sid = open(os.path.join(out, 'domain_sid.txt')).read().strip()
except OSError:
    pass

# NT hashes and AES keys on command lines (the krbtgt key from DCSync above all) stay in
# the lab's state folder: the committed labels say <hash> instead.
HEX_KEY = re.compile(r'(?<![0-9a-fA-F])(?:[0-9a-fA-F]{64}|[0-9a-fA-F]{32})(?![0-9a-fA-F])')


def redact(v):
    return HEX_KEY.sub('<hash>', v) if isinstance(v, str) else v


labels = {
    'lab': {
        'realm': 'DCTAP.TEST', 'netbios_domain': 'DCTAP', 'domain_sid': sid,
        'dc': {'name': 'dc1.dctap.test', 'ip': '10.78.0.10'},
        'clients': [{'name': 'WS01 (netns dt-cl1)', 'ip': '10.78.0.20'},
                    {'name': 'WS02 (netns dt-cl2)', 'ip': '10.78.0.21'}],
        'capture': 'SPAN of the DC switch port (tc mirred ingress+egress) recorded with '
                   'tcpdump in netns dt-sensor on dt-rec0',
        'note': 'Packets inside a step window that involve its src_ip and the DC belong '
                'to that step; anything else is background (ARP, DC-initiated traffic). '
                'Commands use the helpers of lab/lib/common.sh (client, client2, imp, '
                'imp2, impfix, imptool, smbc, smbc2) and lab/lib/scenarios.sh.',
    },
    'scenarios': [],
}
for s in scen:
    s = dict(s)
    pcap = os.path.join(out, 'pcaps', os.path.basename(s['pcap']))
    s['pcap_bytes'] = os.path.getsize(pcap) if os.path.exists(pcap) else None
    s['src_ips'] = sorted({st['src_ip'] for st in steps if st['scenario'] == s['key']})
    s['steps'] = [{k: redact(v) for k, v in st.items() if k != 'scenario'}
                  for st in steps if st['scenario'] == s['key']]
    labels['scenarios'].append(s)

with open(os.path.join(out, 'labels.json'), 'w') as f:
    json.dump(labels, f, indent=1)
    f.write('\n')
print('labels: %d scenarios, %d steps -> %s/labels.json' % (len(scen), len(steps), out))
