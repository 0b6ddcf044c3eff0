/* `sleep SECONDS|infinity` for the data-plane image, which has no shell or
 * coreutils: the operator's cleanup DaemonSet holds its pods Ready with
 * `sleep infinity` after the restore. Exits 0 on SIGTERM or SIGINT (it runs
 * as PID 1, where the default actions do not apply). Built statically for
 * each architecture so it needs nothing else from the image. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void on_stop(int sig) { (void)sig; _exit(0); }

int main(int argc, char **argv) {
  if (argc != 2) {
    fputs("usage: sleep SECONDS|infinity\n", stderr);
    return 2;
  }
  struct sigaction stop = {.sa_handler = on_stop};
  if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0) return 1;
  if (strcmp(argv[1], "infinity") == 0 || strcmp(argv[1], "inf") == 0) {
    for (;;) pause();
  }
  char *end = NULL;
  double secs = strtod(argv[1], &end);
  if (end == argv[1] || *end != '\0' || !(secs >= 0) || isinf(secs)) {
    fprintf(stderr, "sleep: invalid time interval '%s'\n", argv[1]);
    return 2;
  }
  struct timespec left = {.tv_sec = (time_t)secs, .tv_nsec = (long)((secs - floor(secs)) * 1e9)};
  while (nanosleep(&left, &left) < 0) {
    if (errno != EINTR) return 1;
  }
  return 0;
}
