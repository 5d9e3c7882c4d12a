#include <stdio.h>
const char *leaf(void);
const char *mid(void) {
    static char buf[64];
    snprintf(buf, sizeof buf, "mid-1.0(%s)", leaf());
    return buf;
}
