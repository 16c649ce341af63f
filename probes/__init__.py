"""Collectors that run beside a training job (NVML, InfiniBand sysfs, SM split, timers)."""
