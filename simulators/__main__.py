"""``python -m simulators [FILE] [--host H] [--modbus-port P] [--opcua-port P]``: same as ``iiot-gateway simulate``."""

import sys

from simulators.runner import main_simulate

sys.exit(main_simulate(sys.argv[1:]))
