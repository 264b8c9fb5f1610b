"""Where reports go: files, stdout, a ticketing webhook, and the spool for what could not be delivered."""
