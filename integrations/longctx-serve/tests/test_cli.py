"""``longctx serve``: arguments reach the app, errors are one line, the model loads before serving."""

from __future__ import annotations

import pytest

from longctx_llm.cli import main


@pytest.fixture
def captured(monkeypatch):
    """uvicorn.run replaced: what it would have served."""
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    return seen


def test_serve_builds_the_app_of_a_pipeline(tmp_path, tiny_model_dir, captured, monkeypatch, capsys):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"model: {{source: {tiny_model_dir}, device: cpu, dtype: float32}}\n")
    monkeypatch.setenv("LONGCTX_API_KEY", "from-env")
    assert main(["serve", str(pipeline), "--port", "8123", "--model-name", "mine"]) == 0
    assert (captured["host"], captured["port"]) == ("127.0.0.1", 8123)
    app = captured["app"]
    assert app.state.model_name == "mine" and app.state.engine._validated  # loaded before serving
    assert "mine on http://127.0.0.1:8123/v1 (API key required)" in capsys.readouterr().err

    from fastapi.testclient import TestClient

    with TestClient(app) as http:
        assert http.get("/v1/models").status_code == 401
        assert http.get("/v1/models", headers={"Authorization": "Bearer from-env"}).json()["data"][0]["id"] == "mine"


def test_serve_errors_are_one_line(tmp_path, captured, capsys):
    assert main(["serve", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "app" not in captured
    assert main(["serve", "examples/pipelines/quickstart.yaml", "--port", "70000"]) == 2
    assert "--port: 70000 is not a TCP port" in capsys.readouterr().err
