"""Every example in README.md and docs/guide.md works, so that a changed name or flag breaks a test,
not a reader.

- Each fenced ```python block of README.md and of docs/guide.md runs, in order, in one namespace per
  document, on small data the test supplies (a preamble): ``resnet20.th`` in the current folder (a CIFAR
  ResNet checkpoint; a ResNet-8 with random weights, the depth is read from its keys) and
  ``train_images``, ``train_labels``, ``test_images``, ``test_labels`` (scikit-learn's bundled digits as
  3-channel 8x8 uint8 images).
- Each ``bsnn ...`` / ``torchrun ...`` line of README.md's and docs/guide.md's ```bash blocks uses only
  flags that ``bsnn <command> --help`` lists; the lines of README.md's command table are the examples of
  ``bsnn --help`` and each appears in its command's ``--help``.
- Each line of README.md's command table and quick start runs (in-process, on ``train.npz`` /
  ``test.npz`` of those digits), in order, except those that need what a test cannot make: an ImageNet
  folder (``/data/...``), several processes (``torchrun``: ``tests/test_distributed.py``), or the demo
  (run by ``tests/test_cli.py``). The Lava lines are marked slow.
"""
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from bsnn_lava.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README, GUIDE = ROOT / "README.md", ROOT / "docs" / "guide.md"

pytestmark = pytest.mark.timeout(600)


def fenced_blocks(path: Path, language: str):
    """``(first line number, text)`` of every fenced block of ``language`` in ``path``."""
    text = path.read_text()
    return [(text[:m.start()].count("\n") + 2, m.group(1))
            for m in re.finditer(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)]


def command_lines(path: Path, section: str = None):
    """The ``bsnn`` / ``torchrun`` lines of ``path``'s bash blocks (of the section headed ``section``
    only, if given), comments removed."""
    text = path.read_text()
    if section is not None:
        start = text.index(f"\n## {section}\n")
        end = text.find("\n## ", start + 1)
        text = text[start:end if end >= 0 else None]
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in ("bsnn", "torchrun"):
                lines.append(" ".join(words))
    return lines


TABLE = command_lines(README, "Command line")
QUICK_START = command_lines(README, "Quick start")
EVERY_LINE = sorted(set(TABLE + QUICK_START + command_lines(GUIDE)))


def bsnn_words(line: str):
    """The arguments after ``bsnn`` (or after ``torchrun ... -m bsnn_lava``)."""
    words = shlex.split(line)
    if words[0] == "torchrun":
        return words[words.index("bsnn_lava") + 1:]
    return words[1:]


def help_text(command=None) -> str:
    parser = build_parser()
    if command is None:
        return parser.format_help()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[command].format_help()


def examples(help_page: str):
    """The example lines of a --help page, comments removed, as :func:`command_lines` gives them."""
    found = []
    for line in help_page.splitlines():
        if line.startswith(("  bsnn ", "  torchrun ")):
            found.append(" ".join(shlex.split(line, comments=True)))
    return found


def test_the_docs_have_what_the_tests_read():
    assert len(fenced_blocks(README, "python")) >= 1 and len(fenced_blocks(GUIDE, "python")) >= 8
    assert len(TABLE) >= 15 and len(QUICK_START) == 4
    assert len(README.read_text().splitlines()) <= 200


@pytest.mark.parametrize("line", EVERY_LINE)
def test_every_flag_of_a_documented_line_is_in_its_help(line):
    words = bsnn_words(line)
    page = help_text(words[0])
    for flag in (w for w in words[1:] if w.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", page), f"{line}: bsnn {words[0]} has no {flag}"
    args = build_parser().parse_args(words)  # values parse too (types, choices)
    assert args.command == words[0]


def test_the_help_names_the_readme_examples():
    assert examples(help_text()) == TABLE, "bsnn --help's examples are README.md's command table"
    for line in TABLE:
        command = bsnn_words(line)[0]
        assert line in examples(help_text(command)), f"bsnn {command} --help lacks: {line}"


# --- the Python blocks ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def docs_folder(tmp_path_factory):
    """A folder holding ``resnet20.th``, ``train.npz`` and ``test.npz``; and the preamble's arrays."""
    from bsnn_lava import zoo
    from bsnn_lava.datasets import load_digits_uint8

    folder = tmp_path_factory.mktemp("docs")
    torch.manual_seed(0)
    torch.save(zoo.cifar_resnet(8).state_dict(), folder / "resnet20.th")
    x_train, y_train, x_test, y_test = load_digits_uint8()
    rgb = lambda x: np.ascontiguousarray(np.repeat(x.transpose(0, 2, 3, 1), 3, axis=-1))  # (N, 1, 8, 8) -> NHWC, 3 channels
    data = {"train_images": rgb(x_train[:96]), "train_labels": y_train[:96],
            "test_images": rgb(x_test[:16]), "test_labels": y_test[:16]}
    np.savez(folder / "train.npz", x=data["train_images"], y=data["train_labels"])
    np.savez(folder / "test.npz", x=data["test_images"], y=data["test_labels"])
    return folder, data


def run_blocks(path: Path, folder: Path, data: dict, monkeypatch):
    monkeypatch.chdir(folder)
    namespace = {"__name__": "__docs__", **data}
    for line, code in fenced_blocks(path, "python"):
        try:
            exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{path.name}, the python block at line {line}: {type(err).__name__}: {err}") from err
    return namespace


def test_readme_python_blocks_run(docs_folder, monkeypatch):
    folder, data = docs_folder
    namespace = run_blocks(README, folder, data, monkeypatch)
    assert (folder / "r20.h5").is_file() and namespace["lava"].predictions_per_step.shape == (80, 2)


def test_guide_python_blocks_run(docs_folder, monkeypatch):
    folder, data = docs_folder
    namespace = run_blocks(GUIDE, folder, data, monkeypatch)
    assert namespace["exact"].frame_reset and namespace["graded"].spikes == "graded"
    assert namespace["streamed"] is not None and (folder / "r20_p4.th").is_file()


# --- the command lines ----------------------------------------------------------------------------------

NOT_RUN = {"torchrun": "several processes: tests/test_distributed.py", "/data/": "an ImageNet folder",
           "bsnn demo": "tests/test_cli.py runs the demo"}


def runnable(lines):
    return [line for line in lines if not any(key in line for key in NOT_RUN)]


def expected_exit(line: str):
    comment = next((text for text in README.read_text().splitlines() if text.startswith(("bsnn ", "torchrun "))
                    and " ".join(shlex.split(text, comments=True)) == line), "")
    return (0, 2) if "exit 2" in comment else (0,)


def run_lines(lines, folder: Path, monkeypatch, capsys):
    monkeypatch.chdir(folder)
    for line in lines:
        code = main(bsnn_words(line))
        out = capsys.readouterr()
        assert code in expected_exit(line), f"{line}: exit {code}\n{out.err[-2000:]}"


def test_readme_command_lines_run(docs_folder, tmp_path, monkeypatch, capsys):
    """The quick start, then the command table in its order (each line makes what the next read)."""
    folder, _ = docs_folder
    for name in ("resnet20.th", "train.npz", "test.npz"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    lines = [line for line in runnable(QUICK_START + TABLE) if "--backend lava" not in line]
    run_lines(lines, tmp_path, monkeypatch, capsys)
    for made in ("r20.h5", "result.json", "report.html", "r20_p4.th", "r20_g8e.th", "r20_p4.h5", "r20_g4.h5",
                 "r20_g8e.h5", "stream.html", "tradeoff.html"):
        assert (tmp_path / made).is_file(), made


@pytest.mark.slow  # three Lava runs, besides the chain: about a minute on two cores
def test_readme_lava_command_lines_run(docs_folder, tmp_path, monkeypatch, capsys):
    folder, _ = docs_folder
    for name in ("resnet20.th", "train.npz", "test.npz"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    lines = runnable(QUICK_START + TABLE)  # the chain again, this time with its Lava lines
    assert sum("--backend lava" in line for line in lines) >= 3
    run_lines(lines, tmp_path, monkeypatch, capsys)
