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
