"""The daily report, its e-mail, the rollups it reads and the status command."""
