/*
 * auth.h -- memcached's auth file (-Y FILE): who may use the server.
 *
 * Why this file exists: memcached 1.6 deployments protect a server with an
 * auth file of "user:password" lines.  Text clients authenticate with a
 * "set <key> <flags> <exptime> <bytes>" whose data is "user password" as
 * their first command (proto.c), binary clients with SASL PLAIN
 * (binary.c); both check the same table, loaded here once at start.  The
 * file is read whole at load; a missing, unreadable or malformed file is
 * an error the server refuses to start with.  Checks compare in constant
 * time and take no lock (the table is read-only while the server runs).
 */
#ifndef SM_PROTO_AUTH_H
#define SM_PROTO_AUTH_H

#include <stdbool.h>
#include <stddef.h>

typedef struct sm_auth sm_auth;

/* Load an auth file: NULL and a message in err when it cannot be used. */
sm_auth *sm_auth_load(const char *path, char *err, size_t errlen);
void sm_auth_free(sm_auth *a);

/* user[0..nuser) with password pass[0..npass) is in the table. */
bool sm_auth_check(const sm_auth *a, const char *user, size_t nuser, const char *pass, size_t npass);

/*
 * A SASL PLAIN message (RFC 4616: "authzid NUL authcid NUL passwd") names
 * a user of the table with the right password.  An authzid, if given, must
 * be the authcid itself (nobody may act for someone else).
 */
bool sm_auth_check_plain(const sm_auth *a, const char *msg, size_t len);

#endif
