"""What the two processes, the daemon and the gateway, run the same way: logging, systemd's
notifications and the signals that stop or reload them. Below both; imports only core."""
