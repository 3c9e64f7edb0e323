"""The `sgxl` console script as a user runs it: installed entry point, help, unknown commands."""
import shutil
import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "sgxl", *args], capture_output=True, text=True, timeout=120)


def test_console_script_installed():
    exe = shutil.which('sgxl')
    assert exe, 'the `sgxl` console script is not on PATH: was the package installed with pip install -e .?'
    out = subprocess.run([exe, '--version'], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith('sgxl ')


def test_help_lists_commands():
    out = run('--help')
    assert out.returncode == 0
    assert 'info' in out.stdout and 'sgxl <command> --help' in out.stdout


def test_unknown_command_is_a_clear_error():
    out = run('frobnicate')
    assert out.returncode == 2
    assert "unknown command 'frobnicate'" in out.stderr and 'info' in out.stderr


def test_info_runs():
    out = run('info')
    assert out.returncode == 0, out.stderr
    assert 'torch' in out.stdout and 'CUDA available' in out.stdout
