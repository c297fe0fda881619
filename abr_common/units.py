"""Unit conversion factors: the one definition of each (all floats, so arithmetic stays in float64).

Decimal prefixes throughout, as for network rates: 1 kbit = 1,000 bits, 1 MB = 1,000,000 bytes.
"""

from __future__ import annotations

#: Milliseconds per second.
MS_PER_S = 1000.0
#: Bits per byte.
BITS_PER_BYTE = 8.0
#: Bits per kilobit.
BITS_PER_KBIT = 1000.0
#: Bits per megabit.
BITS_PER_MBIT = 1e6
#: Kilobits per megabit (kbit/s per Mbit/s).
KBIT_PER_MBIT = 1000.0
#: Bytes per kilobyte.
BYTES_PER_KB = 1000.0
#: Bytes per megabyte.
BYTES_PER_MB = 1e6
