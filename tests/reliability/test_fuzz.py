"""Fuzzing the two parsers that read untrusted input: the frame decoder and the URL parser.

Any input may produce frames or a kipc error, never another exception, and
never an allocation sized by a forged length. ``make reliability`` runs
10^5 inputs each (KIPC_RELIABILITY=full); ``make test`` a short run.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kipc
from kipc import _naming, registry
from kipc._framing import FrameDecoder


def _settings(scale: Any) -> Any:
    return settings(max_examples=scale.n(1_000, 100_000), deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def test_fuzz_frame_decoder(scale: Any, figures: Any) -> None:
    """frame decoder fuzzed: only kipc exceptions"""
    count = 0

    @_settings(scale)
    @given(st.lists(st.binary(max_size=64), max_size=20), st.integers(min_value=0, max_value=1 << 16))
    def run(chunks: list[bytes], max_size: int) -> None:
        nonlocal count
        count += 1
        dec = FrameDecoder(max_size)
        try:
            for c in chunks:
                dec.feed(c)
                while (f := dec.next_frame()) is not None:
                    assert len(f) <= max_size
            dec.eof()
        except kipc.ProtocolError:
            pass
        assert dec.buffered <= sum(map(len, chunks))

    run()
    figures.record("framing", "random streams decoded, non-kipc exceptions", f"{count}, 0")


def test_fuzz_url_parser(scale: Any, figures: Any) -> None:
    """URL parser fuzzed: only kipc exceptions"""
    count = 0
    schemes = registry.schemes()

    @_settings(scale)
    @given(st.one_of(st.text(max_size=80),
                     st.builds(lambda s, rest: f"{s}://{rest}", st.sampled_from(schemes), st.text(max_size=60))))
    def run(url: str) -> None:
        nonlocal count
        count += 1
        try:
            u = _naming.parse_url(url)
        except kipc.InvalidArgument:
            return
        assert u.scheme and "://" in url

    run()
    figures.record("url parser", "random URLs parsed, non-kipc exceptions", f"{count}, 0")


def test_fuzz_name_and_key_validators(scale: Any) -> None:
    """name/key validators fuzzed: accept only the documented alphabet"""

    @_settings(scale)
    @given(st.text(max_size=240), st.one_of(st.text(max_size=12), st.integers()))
    def run(name: str, key: Any) -> None:
        try:
            ok = _naming.validate_name(name)
            assert "/" not in ok and ".." not in ok and "\x00" not in ok and 0 < len(ok) <= 200
        except kipc.InvalidArgument:
            pass
        try:
            k = _naming.validate_key(key)
            assert -(2**31) <= k < 2**31 and k != 0
        except kipc.InvalidArgument:
            pass

    run()
