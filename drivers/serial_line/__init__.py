"""Serial ASCII instruments (``driver: serial_line``): scales, barcode readers, temperature transmitters.

Line-oriented devices on a serial port: each reading is one line of text, ended by a terminator, parsed by
a regular expression whose named groups become tags. Polled (send a command, read the reply) or
free-running (the device streams lines). See ``docs/serial-instruments.md``.
"""
