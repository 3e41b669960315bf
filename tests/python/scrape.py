"""Reads a middleman admin endpoint with real parsers and prints what it found.

Usage: scrape.py http://127.0.0.1:PORT. Parses /metrics with prometheus_client's text-format
parser (so a format error fails here) and /stats with json, and prints one line per number:
`name{label=value,...}<TAB>value` (or `name<TAB>value`) for samples, `stats.a.b<TAB>value` for /stats.
"""
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

base = sys.argv[1]
with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
    assert r.status == 200, r.status
    assert r.headers["Content-Type"].startswith("text/plain"), r.headers["Content-Type"]
    text = r.read().decode()
for family in text_string_to_metric_families(text):
    for sample in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
        name = f"{sample.name}{{{labels}}}" if labels else sample.name
        print(f"{name}\t{sample.value}")


def flatten(prefix, value):
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            flatten(f"{prefix}.{i}", v)
    else:
        print(f"{prefix}\t{value}")


with urllib.request.urlopen(base + "/stats", timeout=5) as r:
    flatten("stats", json.loads(r.read()))
