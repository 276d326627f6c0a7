/*
** Replay driver for the libFuzzer harnesses: `make check-fuzz` links it with one
** tests/fuzz/fuzz_<unit>.c and runs it over tests/fuzz/corpus/<unit>/, so every
** seed and every crash input kept in the corpus runs under the sanitizers on each
** check, with no clang or libFuzzer needed.
**
** Usage: replay DIR|FILE...  Each regular file is read whole and handed to
** LLVMFuzzerTestOneInput once. A harness reports a broken invariant by aborting
** (the sanitizers do the same), so reaching the end means every input passed.
** The last line is "# summary: N passed, 0 failed", the line tests/run-suite reads.
*/
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Largest input replayed; corpus files are small, anything bigger is a mistake. */
#define REPLAY_MAX_INPUT (1u << 20)
/* Entries read per directory; the seed corpora hold a few dozen. */
#define REPLAY_MAX_ENTRIES 100000
/* Room for a directory plus an entry name. */
#define REPLAY_PATH_MAX 4096

/* Run one file; -1 when it cannot be read (counted as a failure of the driver). */
static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    size_t n;

    if (f == NULL) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        return -1;
    }
    buf = malloc(REPLAY_MAX_INPUT + 1);
    if (buf == NULL) {
        fclose(f);
        return -1;
    }
    n = fread(buf, 1, REPLAY_MAX_INPUT + 1, f);
    fclose(f);
    if (n > REPLAY_MAX_INPUT) {
        fprintf(stderr, "replay: %s is larger than %u bytes\n", path, REPLAY_MAX_INPUT);
        free(buf);
        return -1;
    }
    /* An exact-size copy lets ASan catch a harness that reads past the input. */
    {
        uint8_t *exact = malloc(n == 0 ? 1 : n);
        if (exact == NULL) {
            free(buf);
            return -1;
        }
        memcpy(exact, buf, n);
        free(buf);
        LLVMFuzzerTestOneInput(exact, n);
        free(exact);
    }
    return 0;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Replay every regular file of @dir in name order (a stable log). */
static int replay_dir(const char *dir, unsigned long *passed, unsigned long *failed)
{
    DIR *d = opendir(dir);
    struct dirent *ent;
    char **names = NULL;
    size_t count = 0, cap = 0, i;

    if (d == NULL) {
        fprintf(stderr, "replay: cannot open directory %s\n", dir);
        return -1;
    }
    while ((ent = readdir(d)) != NULL && count < REPLAY_MAX_ENTRIES) {
        if (ent->d_name[0] == '.')
            continue;
        if (count == cap) {
            size_t ncap = cap == 0 ? 64 : cap * 2;
            char **grown = realloc(names, ncap * sizeof(*names));
            if (grown == NULL)
                break;
            names = grown;
            cap = ncap;
        }
        names[count] = strdup(ent->d_name);
        if (names[count] == NULL)
            break;
        count++;
    }
    closedir(d);
    if (count > 0)
        qsort(names, count, sizeof(*names), compare_names);
    for (i = 0; i < count; i++) {
        char path[REPLAY_PATH_MAX];
        struct stat sb;
        int w = snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        free(names[i]);
        if (w < 0 || (size_t)w >= sizeof(path) || stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        if (replay_file(path) == 0)
            (*passed)++;
        else
            (*failed)++;
    }
    free(names);
    return 0;
}

int main(int argc, char **argv)
{
    unsigned long passed = 0, failed = 0;
    int i;

    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR|FILE...\n", argv[0]);
        return 2;
    }
    for (i = 1; i < argc; i++) {
        struct stat sb;
        if (stat(argv[i], &sb) != 0) {
            fprintf(stderr, "replay: %s does not exist\n", argv[i]);
            failed++;
        } else if (S_ISDIR(sb.st_mode)) {
            if (replay_dir(argv[i], &passed, &failed) != 0)
                failed++;
        } else if (replay_file(argv[i]) == 0) {
            passed++;
        } else {
            failed++;
        }
    }
    printf("# summary: %lu passed, %lu failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
