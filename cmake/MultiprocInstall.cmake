# Installation and package config: owned by the packaging work (see docs/building.md).
