#include <stdio.h>
const char *driver_version(void);
int main(void) { printf("gpu app: driver %s\n", driver_version()); return 0; }
