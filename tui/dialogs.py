"""Modal questions: what to do with a live run when the dashboard quits."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class QuitDialog(ModalScreen[str]):
    """Quit: stop the run (it writes a checkpoint first), leave it training, or stay."""

    DEFAULT_CSS = """
    QuitDialog { align: center middle; }
    QuitDialog > Vertical { width: 72; height: auto; border: thick $warning; background: $surface; padding: 1 2; }
    QuitDialog Horizontal { height: auto; margin-top: 1; }
    QuitDialog Button { margin-right: 1; }
    """
    BINDINGS = [
        Binding("s", "choose('stop')", "Stop the run"),
        Binding("l", "choose('leave')", "Leave it running"),
        Binding("escape", "choose('cancel')", "Cancel"),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.run_name = name

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"[b]{self.run_name}[/b] is still training. Quit the dashboard and:")
            with Horizontal():
                yield Button("Stop it (checkpoint first) [s]", id="stop", variant="error", action="screen.choose('stop')")
                yield Button("Leave it running [l]", id="leave", variant="primary", action="screen.choose('leave')")
                yield Button("Cancel", id="cancel", action="screen.choose('cancel')")

    def action_choose(self, answer: str) -> None:
        self.dismiss(answer)
