"""The README and the pages under docs/: every code block runs as written, or says why not.

A fenced block is run unless the line before it (after any other marker comments) is
``<!-- not run: REASON -->``. Markers, each an HTML comment on its own line just above
the fence:

- ``<!-- not run: REASON -->``: exempt, with the reason shown to the reader;
- ``<!-- run by: tests/FILE.py::TEST -->``: a dedicated test runs it (and checks more);
- ``<!-- twin: FLAGS -->``: the block's tiny-data twin: FLAGS are appended to every
  training command of the block (tf-supermask-train, -lottery, -finetune, -prune-init),
  so the same command line runs on a few hundred images;
- ``<!-- twin tf-supermask-NAME: FLAGS -->``: FLAGS appended to that binary's commands;
- ``<!-- runs -->``: the marker tests/test_keras_pruning.py looks for.

Each page's blocks run in order in one temporary folder holding links to flags/ and
jobs/ (so ``runs/...`` lands there), shell blocks with bash, Python blocks with
``python -c``, in an environment without TF_* and KERAS_* variables.
"""

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
SHELL = ("bash", "sh", "console")
RUNNABLE = SHELL + ("python",)
TRAINERS = ("tf-supermask-train", "tf-supermask-lottery", "tf-supermask-finetune",
            "tf-supermask-prune-init")
LINKED = ("flags", "jobs")  # what the blocks read from the repository
MARKER = re.compile(r"^<!--\s*(.*?)\s*-->$")


class Block:
    def __init__(self, page, line, lang, code, markers):
        self.page, self.line, self.lang, self.code, self.markers = page, line, lang, code, markers

    def __repr__(self):
        return f"{os.path.relpath(self.page, ROOT)}:{self.line} ({self.lang})"

    def marker(self, prefix):
        """The values of the markers `prefix: value`."""
        return [m[len(prefix) + 1:].strip() for m in self.markers if m.startswith(prefix + ":")]

    @property
    def exempt(self):
        return bool(self.marker("not run"))

    @property
    def run_by(self):
        return self.marker("run by")

    def twins(self):
        """{binary or None (the trainers): flags} from the twin markers."""
        found = {}
        for m in self.markers:
            match = re.match(r"twin(?:\s+(tf-supermask-[\w-]+))?:\s*(.*)$", m)
            if match:
                found[match.group(1)] = match.group(2)
        return found


def blocks(page):
    """The fenced code blocks of a Markdown file, with the marker comments above each."""
    lines = open(page).read().split("\n")
    found, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(\S*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        markers, j = [], i - 1
        while j >= 0 and MARKER.match(lines[j]):
            markers.insert(0, MARKER.match(lines[j]).group(1))
            j -= 1
        end = lines.index("```", i + 1)
        found.append(Block(page, i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n",
                           markers))
        i = end + 1
    return found


def with_twin(script, twins):
    """The shell script with each binary's twin flags appended to its command lines."""
    logical, current = [], ""
    for line in script.split("\n"):
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    out, heredoc = [], None
    for line in logical:
        if heredoc:
            out.append(line)
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        match = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        heredoc = match.group(1) if match else None
        command = re.match(r"^\s*(?:\w+=\S*\s+)*(tf-supermask-[\w-]+)\b", line)
        flags = []
        if command:
            binary = command.group(1)
            flags = [twins[key] for key in (None, binary) if key in twins
                     and (key == binary or binary in TRAINERS)]
        if flags:
            line = re.sub(r"\s+#\s.*$", "", line).rstrip() + " " + " ".join(flags)
        out.append(line)
    return "\n".join(out)


def plain_env():
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("TF_", "KERAS_"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]


def test_every_block_is_run_or_exempt():
    assert len(PAGES) > 10 and ALL_BLOCKS
    for block in ALL_BLOCKS:
        known = ("not run:", "run by:", "twin", "runs")
        assert all(m.startswith(known) for m in block.markers), (block, block.markers)
        assert block.lang, f"{block}: say the block's language after the fence"
        if block.exempt:
            assert all(reason for reason in block.marker("not run")), block
            continue
        if block.run_by:
            for target in block.run_by:
                path, name = target.split("::")
                assert f"def {name}(" in open(os.path.join(ROOT, path)).read(), (block, target)
            continue
        assert block.lang in RUNNABLE, f"{block}: run it or mark it <!-- not run: why -->"
        if block.twins():
            assert block.lang in SHELL, block
            assert with_twin(block.code, block.twins()) != block.code, \
                f"{block}: no command takes the twin's flags"


def test_no_indented_code_blocks():
    """Commands sit in fenced blocks (which the tests see), not in indented ones."""
    for page in PAGES:
        inside, previous = False, ""
        for number, line in enumerate(open(page).read().split("\n"), 1):
            if line.startswith("```"):
                inside = not inside
            elif not inside and line.startswith("    ") and line.strip() and not previous.strip():
                pytest.fail(f"{page}:{number}: an indented code block; fence it")
            previous = line


def test_links_resolve_and_every_page_is_linked():
    readme = open(README).read()
    for page in PAGES:
        text = open(page).read()
        if page != README:
            name = os.path.relpath(page, ROOT)
            assert f"]({name})" in readme, f"README does not link {name}"
            first = text.split("\n\n")
            assert first[0].startswith("# ") and len(first) > 1 and first[1].strip(), page
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^(https?:|mailto:|#)", target):
                continue
            path = os.path.join(os.path.dirname(page), target.split("#")[0])
            assert os.path.exists(path), f"{page}: broken link {target}"


def test_the_readme_test_command_is_what_ci_runs():
    """The README's first test command is the one .ci/run runs: everything, slow included."""
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    (block,) = [b for b in blocks(README) if "pytest" in b.code]
    first = block.code.split("\n")[0].split("#")[0].strip()
    assert first == "python -m pytest -q" and first in ci.splitlines()
    assert '-m "not slow"' in block.code


def test_bring_your_own_model_example_runs_as_written(tmp_path):
    text = open(README).read()
    start = text.index("## Bring your own model\n")
    section = text[start:text.find("\n## ", start + 1)]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len([line for line in code.splitlines() if line.strip()]) <= 13
    env = plain_env()
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # The saved model loads where tf_supermask cannot be imported, as plain Keras.
    check = ("import sys; sys.modules['tf_supermask'] = None; import keras; "
             "m = keras.saving.load_model('my_supermask.keras'); "
             "print(sorted({type(l).__name__ for l in m.layers}))")
    loaded = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "Masked" not in loaded.stdout and "Dense" in loaded.stdout


def _snapshot():
    return {path for name in LINKED for path in glob.glob(os.path.join(ROOT, name, "**"),
                                                           recursive=True)}


@pytest.mark.slow
@pytest.mark.parametrize("page", [os.path.relpath(p, ROOT) for p in PAGES])
def test_code_blocks_run_as_written(page, tmp_path):
    """Every block of the page that is neither exempt nor run by another test, in order."""
    todo = [b for b in blocks(os.path.join(ROOT, page)) if not b.exempt and not b.run_by]
    if not todo:
        pytest.skip("no block to run here")
    for name in LINKED:
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    before, env = _snapshot(), plain_env()
    for block in todo:
        if block.lang == "python":
            command = [sys.executable, "-c", block.code]
        else:
            command = ["bash", "-c", "set -eo pipefail\n" + with_twin(block.code, block.twins())]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=900)
        assert result.returncode == 0, (f"{block} failed:\n{command[-1]}\n"
                                        f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    assert _snapshot() == before, "a block wrote into the repository"
