"""Argument parsing that ends a user error in one line and exit code 2, never a usage dump."""

from __future__ import annotations

import argparse
from typing import NoReturn

EXIT_USAGE = 2


class UsageParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + error
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")
