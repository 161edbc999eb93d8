"""Software PLCs for tests, the demo and benchmarks: a plant model served over Modbus TCP and OPC UA.

- :class:`~simulators.plant.Plant`: signals (sine, ramp, counter, random walk, constant, machine cycle) from a
  plant file (:mod:`simulators.config`; the bundled one is ``simulators/plant.yaml``).
- :class:`~simulators.modbus_sim.ModbusSimulator` and :class:`~simulators.opcua_sim.OpcUaSimulator`: the PLCs.
- :func:`~simulators.runner.run_simulators` / :func:`~simulators.runner.main_simulate`: ``iiot-gateway simulate``.

This package never imports ``gateway`` or ``drivers``: it encodes values with its own code
(:mod:`simulators.codec`), so a decoding bug in the gateway cannot be cancelled out by the same bug here.
Submodules are imported lazily: ``from simulators.modbus_sim import ModbusSimulator``.
"""
