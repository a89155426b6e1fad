"""What every stage shares: ``errors`` (UserError: one line, exit 2), ``console`` (the stdout and stderr
consoles, progress bars), ``atomic`` and ``fsops`` (temporary name + rename), ``jsonfile`` (the JSON
document reader/writer), ``tables`` (CSV reading with checks that name file, row and column),
``duplicates`` (the one duplicate-finder), ``outputs`` (refuse an output path that is one of the inputs)."""
