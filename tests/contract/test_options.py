"""Options and errors users meet first (issue 16): unknown options named, ``wait=``, the timeout
hierarchy, ResourceWarning for an unclosed creator, messages."""

from __future__ import annotations

import gc
import threading
import time
import warnings

import pytest

import kipc
from kipc.cli.main import main
from kipc.testing import unique_key, unique_name


def _urls() -> list[str]:
    return [f"ring://{unique_name()}", f"sysvmq://{unique_key()}", f"posixmq://{unique_name()}",
            f"fifo://{unique_name()}", f"file://{unique_name()}"]


@pytest.mark.parametrize("scheme", ["ring", "sysvmq", "posixmq", "fifo", "file", "unix", "tcp"])
def test_unknown_query_key_names_the_valid_options(scheme: str) -> None:
    url = {"sysvmq": f"sysvmq://{unique_key()}", "tcp": "tcp://127.0.0.1:9"}.get(scheme, f"{scheme}://{unique_name()}")
    with pytest.raises(kipc.InvalidArgument) as e:
        if scheme in ("unix", "tcp"):
            kipc.open(url + "?capcity=1")
        else:
            kipc.open(url + "?capcity=1MiB", create=True)
    assert isinstance(e.value, ValueError)
    msg = str(e.value)
    assert "'capcity'" in msg and "valid options:" in msg and "codec" in msg, msg
    if scheme == "ring":
        assert "capacity" in msg


def test_unknown_keyword_is_type_error_naming_valid_options() -> None:
    with pytest.raises(TypeError) as e:
        kipc.open(f"ring://{unique_name()}", create=True, capcity=4096)  # type: ignore[call-overload]
    assert "valid options: capacity" in str(e.value)
    with pytest.raises(TypeError, match="valid options"):
        kipc.listen(f"unix://{unique_name()}", backlg=3)


def test_scheme_keyword_must_match_url() -> None:
    with pytest.raises(kipc.InvalidArgument, match="scheme"):
        kipc.open(f"ring://{unique_name()}", scheme="sysvmq")  # type: ignore[call-overload]


def test_cli_typo_in_url_option_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", f"ring://{unique_name()}?capcity=1MiB", "--create", "x"]) == 2
    assert "valid options" in capsys.readouterr().err


@pytest.mark.parametrize("index", range(5))
def test_open_wait_until_created(index: int) -> None:
    url = _urls()[index]
    opener = {"direction": "send"} if url.startswith("fifo") else {}
    creator = {"direction": "recv"} if url.startswith("fifo") else {}
    made: list[kipc.Channel] = []

    def create() -> None:
        time.sleep(0.2)
        made.append(kipc.open(url, create=True, **creator))  # type: ignore[arg-type]

    t = threading.Thread(target=create)
    t.start()
    try:
        t0 = time.monotonic()
        with kipc.open(url, wait=10, **opener):  # type: ignore[arg-type]
            assert 0.1 < time.monotonic() - t0 < 9
    finally:
        t.join()
        for ch in made:
            ch.close()


def test_open_wait_listener_appears() -> None:
    url = f"unix://{unique_name()}"
    made: list[kipc.Listener] = []
    t = threading.Timer(0.2, lambda: made.append(kipc.listen(url)))
    t.start()
    try:
        with kipc.open(url, wait=10) as ch:
            assert ch.url
    finally:
        t.join()
        for m in made:
            m.close()


def test_open_wait_times_out_naming_url() -> None:
    url = f"ring://{unique_name()}"
    t0 = time.monotonic()
    with pytest.raises(kipc.Timeout) as e:
        kipc.open(url, wait=0.3)
    assert time.monotonic() - t0 >= 0.3
    assert url in str(e.value) and "0.3 s" in str(e.value)
    with pytest.raises(kipc.NotFound):
        kipc.open(url)  # without wait=: at once


def test_would_block_and_timeout_follow_the_stdlib() -> None:
    with kipc.open(f"ring://{unique_name()}", create=True) as ch:
        with pytest.raises(BlockingIOError) as e0:
            ch.recv(timeout=0)
        assert not isinstance(e0.value, TimeoutError)
        with pytest.raises(TimeoutError) as e1:
            ch.recv(timeout=0.05)
        assert not isinstance(e1.value, BlockingIOError)
        assert isinstance(e0.value, kipc.DeadlineExceeded) and isinstance(e1.value, kipc.DeadlineExceeded)
        assert "after 0.05 s" in str(e1.value)


def test_timeout_formatted_as_given() -> None:
    assert str(kipc.Deadline(9.99999).error("recv on x")) == "recv on x timed out after 9.99999 s"
    assert str(kipc.Deadline(10).error("recv on x")) == "recv on x timed out after 10 s"
    assert str(kipc.Deadline(0.25).error("recv on x")) == "recv on x timed out after 0.25 s"


def test_unclosed_creator_warns() -> None:
    url = f"ring://{unique_name()}"
    ch = kipc.open(url, create=True)
    opener = kipc.open(url)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del opener  # an opener owns nothing: no warning
            gc.collect()
            assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
            del ch
            gc.collect()
        got = [w for w in caught if issubclass(w.category, ResourceWarning)]
        assert got and url in str(got[0].message)
    finally:
        kipc.remove(url)


def test_sysvmq_stat_mode_octal() -> None:
    with kipc.open(f"sysvmq://{unique_key()}", scheme="sysvmq", create=True) as q:
        st = q.stat()
        assert "mode=0o600" in repr(st) and st.mode == 0o600
