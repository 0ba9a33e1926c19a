from optimum.commands.export.base import ExportCommand

from optimum_qaic_moe.cli import QAICExportCommand

REGISTER_COMMANDS = [(QAICExportCommand, ExportCommand)]
