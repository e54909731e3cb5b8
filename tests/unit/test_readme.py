"""The README's two commands stay true: CI runs exactly the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_readme_has_the_two_commands_and_ci_runs_the_test_one():
    cmds = readme_commands()
    main_cmd = next(c for c in cmds if "longctx run" in c)
    test_cmd = next(c for c in cmds if "pytest" in c)
    assert main_cmd.startswith("./scripts/setup.sh && ") and test_cmd.startswith("./scripts/setup.sh && ")
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
    for path in re.findall(r"(examples/\S+\.yaml)", main_cmd):
        assert (ROOT / path).is_file()


def test_readme_strategy_lines_validate():
    """Each one-line ``strategy:`` swap shown in the README's YAML blocks is a valid pipeline setting."""
    import yaml

    from longctx_llm.config import parse_config

    blocks = re.findall(r"```yaml\n(.+?)\n```", (ROOT / "README.md").read_text(), re.S)
    lines = [ln.split("#")[0] for b in blocks for ln in b.splitlines() if ln.startswith("strategy:")]
    assert len(lines) >= 4
    for line in lines:
        parse_config({"strategy": yaml.safe_load(line)["strategy"]})
