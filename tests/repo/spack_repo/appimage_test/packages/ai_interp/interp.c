/* A tiny interpreter: prints each line of the script after the shebang, upper-cased
   when its own option -u is given, then the script's arguments. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    int upper = 0, i = 1;
    if (i < argc && !strcmp(argv[i], "-u")) upper = 1, i++;
    if (i >= argc) return 2;
    FILE *f = fopen(argv[i], "r");
    if (!f) { perror(argv[i]); return 3; }
    char line[256];
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        for (char *c = line; upper && *c; c++) *c = toupper((unsigned char)*c);
        fputs(line, stdout);
    }
    printf("args:");
    for (int j = i + 1; j < argc; j++) printf(" %s", argv[j]);
    printf("\n");
    return 0;
}
