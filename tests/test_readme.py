"""The README's examples run as written."""

import os
import re
import subprocess
import sys

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_blocks(section):
    """The ```python blocks of the README section titled `section`."""
    text = open(README).read()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)


def test_bring_your_own_model_example_runs_as_written(tmp_path):
    (code,) = python_blocks("Bring your own model")
    assert len([line for line in code.splitlines() if line.strip()]) <= 13
    env = {key: value for key, value in os.environ.items() if not key.startswith("TF_")}
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
