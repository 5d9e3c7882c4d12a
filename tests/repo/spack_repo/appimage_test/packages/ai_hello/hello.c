/* Prints what it linked and a data file found relative to its own executable,
   the way real programs find ../share. */
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
const char *mid(void);
const char *side(void);
int main(int argc, char **argv) {
    char exe[PATH_MAX] = {0}, path[PATH_MAX + 64], greeting[128] = "missing";
    if (readlink("/proc/self/exe", exe, sizeof exe - 1) > 0) {
        snprintf(path, sizeof path, "%s/../share/ai-hello/greeting.txt", dirname(exe));
        FILE *f = fopen(path, "r");
        if (f) {
            if (fgets(greeting, sizeof greeting, f)) greeting[strcspn(greeting, "\n")] = 0;
            fclose(f);
        }
    }
    printf("hello: %s %s greeting=%s args=", mid(), side(), greeting);
    for (int i = 1; i < argc; i++) printf("%s%s", i > 1 ? "," : "", argv[i]);
    printf("\n");
    return 0;
}
