"""What every stage shares: ``errors`` (UserError: one line, exit 2; file-system errors translated),
``reporting`` (the Reporter the library speaks through; the command line gives it rich bars), ``atomic`` and
``fsops`` (temporary name + rename), ``jsonfile`` and ``yamlfile`` (the JSON and YAML readers, bounded),
``tables`` (CSV reading with checks that name file, row and column), ``inputs`` (an input is a regular file),
``duplicates`` (the one duplicate-finder), ``outputs`` (refuse an output path that is one of the inputs)."""
