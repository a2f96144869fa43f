import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_main_command_starts_a_local_prefect_server_and_stops_it(tmp_path):
    """With no Prefect API configured, `local_prefect_api` starts one on 127.0.0.1, points
    PREFECT_API_URL (and this process's flows) at it, says it is temporary, sends the queued
    logs and events before it stops (tests the private call `drain_events`), and shuts it down."""
    script = textwrap.dedent("""
        import httpx
        from prefect import flow
        from flows.server import describe, drain_prefect_clients, local_prefect_api, healthy

        @flow(log_prints=True)
        def hello():
            print("a log line and the run's events are queued for the API")
            return 1

        with local_prefect_api() as url:
            import os
            assert url.startswith("http://127.0.0.1:"), url
            assert os.environ["PREFECT_API_URL"] == url
            assert healthy(url)
            hello()
            runs = httpx.post(url + "/flow_runs/filter", json={}).json()
            assert [r["state_type"] for r in runs] == ["COMPLETED"], runs
            assert "temporary server that stops when this command ends" in describe(url)
            drain_prefect_clients()
            logs = httpx.post(url + "/logs/filter", json={}).json()
            assert any("a log line" in log["message"] for log in logs), logs
        assert not healthy(url), "server still running"
        print("OK", url)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    # Queued logs and events must be sent before the server stops; otherwise the interpreter
    # waits at exit on a server that is gone (minutes). The timeout turns such a hang into a failure.
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "OK http://127.0.0.1:" in res.stdout


def test_a_configured_prefect_server_that_does_not_answer_is_named_in_one_line_never_replaced(tmp_path):
    """Set in the active profile (not the environment), a server that is down stops `ganpipe
    schedule`, `retrain` and `repro` with one line naming it: none starts a temporary server whose
    runs the team would never see."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    prefect = Path(sys.executable).with_name("prefect")
    subprocess.run([str(prefect), "config", "set", f"PREFECT_API_URL={url}"], env=env, check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    (tmp_path / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    for command in (["schedule"], ["retrain"], ["repro"]):
        res = subprocess.run([sys.executable, "-m", "flows.cli", *command], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert res.returncode == 2, (command, res.stderr[-2000:])
        assert res.stderr.splitlines() == [
            f"ganpipe {command[0]}: error: Prefect API {url} (PREFECT_API_URL or the active Prefect profile) does "
            "not answer: start that server, or unset it (`prefect config unset PREFECT_API_URL`) to use a temporary "
            "local one"
        ], command
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "prefect-home"]  # nothing ran
