"""crosssim: an independent test-data generator (MR heads with k-space motion, abdominal CT phases, coverage)."""

VERSION = "1.0.0"
