#!/usr/bin/env python3
"""Copies the bodies of fuzz/fuzz_targets/*.rs into the modules of tests/fuzz_smoke.rs.

The smoke test runs the same checks on stable Rust without depending on this crate; its
`the_copies_match_the_fuzz_targets` test fails when the copies drift. Run this after changing
a target, from anywhere.
"""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "tests", "fuzz_smoke.rs")
TARGETS = ["ws_decoder", "handshake", "message"]
ENTRY = "use libfuzzer_sys::fuzz_target;\n"

modules = []
for target in TARGETS:
    with open(os.path.join(ROOT, "fuzz", "fuzz_targets", f"{target}.rs")) as f:
        source = f.read()
    body = source[source.index(ENTRY) + len(ENTRY) :]
    body = body.replace("fuzz_target!(|data: &[u8]| run(data));\n\n", "")
    body = body.replace(
        " (`tests/fuzz_smoke.rs` has a copy).\nfn run(", ".\npub fn run("
    )
    body = "\n".join(("    " + line if line.strip() else "") for line in body.strip("\n").split("\n"))
    modules.append(
        f"/// A copy of `fuzz/fuzz_targets/{target}.rs` without the libFuzzer entry point.\n"
        f"mod {target} {{\n{body}\n}}\n"
    )

with open(SMOKE) as f:
    smoke = f.read()
cut = smoke.index("/// A copy of `fuzz/fuzz_targets/ws_decoder.rs`")
with open(SMOKE, "w") as f:
    f.write(smoke[:cut] + "\n".join(modules))
subprocess.run(["rustfmt", "--edition", "2021", SMOKE], check=True)
