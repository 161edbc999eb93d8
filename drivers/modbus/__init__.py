"""Modbus drivers: address parsing, read planning and vectorised decoding shared by the TCP (and later RTU) drivers."""
