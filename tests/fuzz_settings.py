"""Hypothesis settings shared by the fuzzers: a few seconds each in CI.

``CNN_XP_FUZZ_SCALE=N`` multiplies every fuzzer's number of examples (e.g. 50 for a long
local campaign). No example database is written into the working tree.
"""
import os

from hypothesis import HealthCheck, settings

SCALE = max(1, int(os.environ.get("CNN_XP_FUZZ_SCALE", "1") or 1))


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples * SCALE, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
