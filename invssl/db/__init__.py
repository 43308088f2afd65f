"""The results database: tables (``models``), opening and migrating it (``session``), and the
job queue that workers claim from (``queue``)."""
