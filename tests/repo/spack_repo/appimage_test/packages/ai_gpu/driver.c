const char *driver_version(void) { return "fake-driver-1"; }
