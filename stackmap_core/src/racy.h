/*
 * racy.h -- marking the few reads that race on purpose.
 *
 * Why it exists: a handful of reads look at memory that another thread may
 * be writing, by design, and never act on what they read without checking
 * it again under a lock (or only display it).  ThreadSanitizer rightly
 * reports them.  Rather than a suppression file that hides whole functions
 * or files, such a read lives in a small function marked SM_RACY_READ,
 * next to a comment that says why the race is harmless; every other access
 * in the program stays checked, including the writers' side of these.
 *
 * Inside them, read each field once with SM_RACY_LOAD: a volatile load, so
 * the compiler emits one load per naturally aligned field (whole, never
 * torn into pieces, never re-read).  Not an atomic load: ThreadSanitizer
 * checks atomics even in an exempt function, against the writer's plain
 * stores.
 */
#ifndef SM_RACY_H
#define SM_RACY_H

#if defined(__has_attribute)
#if __has_attribute(no_sanitize)
#define SM_RACY_READ __attribute__((no_sanitize("thread")))
#endif
#endif
#ifndef SM_RACY_READ
#define SM_RACY_READ
#endif

/* One load of x (an aligned scalar) in an SM_RACY_READ function. */
#define SM_RACY_LOAD(x) (*(const volatile __typeof__(x) *)&(x))

#endif
