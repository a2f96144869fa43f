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
