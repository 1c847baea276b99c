/*-------------------------------------------------------------------------
 *
 * kafka_conf.c
 *	  Build a librdkafka configuration: evbus's defaults, then the
 *	  properties of evbus.kafka_config_file, then what evbus's guarantees
 *	  depend on, and the bootstrap servers.
 *
 * The properties file is where TLS and SASL settings, and their secrets,
 * live: it is read by the worker only, and neither its values nor
 * librdkafka's messages about them ever reach a log line.
 *
 * The file may set only the properties of an allow-list (allowed_properties
 * below): librdkafka has properties that load code (plugin.library.paths,
 * ssl.providers, ssl.engine.location), run a command (the kinit command of
 * SASL/GSSAPI, into which sasl.kerberos.principal and sasl.kerberos.keytab
 * are pasted unquoted), write files (offset.store.path) or would undo what
 * evbus's guarantees rest on.  A deny-list of the first kind was bypassed
 * by the next such property librdkafka had; an allow-list fails safe when
 * librdkafka grows a new one (test 250_kafka_allowlist.pl).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <sys/stat.h>

#include "common/hashfn.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "storage/fd.h"

#include "evbus.h"
#include "kafka.h"

/*
 * The librdkafka (2.0) properties evbus.kafka_config_file may set, each
 * thought through: none of them loads code, runs a command or writes a
 * file, and none undoes a guarantee.
 *
 * - connection and security: security.protocol; the ssl.* that name
 *   files (read as the server's user), passwords, PEM text or algorithms;
 *   sasl.mechanisms with its value checked (GSSAPI would run kinit, see
 *   check_sasl), sasl.username, sasl.password;
 * - OAUTHBEARER: the unsecured JWT of tests, and OIDC (method=oidc), whose
 *   token librdkafka fetches over HTTPS from sasl.oauthbearer.token.endpoint.url
 *   with the client id and secret.  Fetching a URL chosen by the file's
 *   author (a superuser) runs no code and no command, and it is how
 *   managed Kafka services are reached, so it is allowed;
 * - tuning of the client, the producer and the consumer: sizes, timeouts,
 *   sockets, reconnects, metadata refresh, batching, compression, the
 *   partitioner, client.id, client.rack, debug and log_level (librdkafka
 *   redacts secrets in its debug output).
 *
 * Left out on purpose: plugin.library.paths, ssl.providers, ssl.engine.*
 * (load code); sasl.kerberos.* (pasted into the kinit command line);
 * offset.store.* (writes files); internal.termination.signal (signals in a
 * server process); what evbus sets for its guarantees (enable.idempotence,
 * enable.gapless.guarantee, acks, message.timeout.ms, delivery.timeout.ms,
 * enable.auto.commit, enable.auto.offset.store, auto.offset.reset,
 * enable.partition.eof, delivery.report.only.error, bootstrap.servers,
 * group.id, log.queue); transactional.id, group.instance.id (one file
 * serves every client of the server); and anything librdkafka adds later.
 */
static const char *const allowed_properties[] = {
	/* connection and security */
	"security.protocol",
	"ssl.ca.location", "ssl.ca.pem", "ssl.ca.certificate.stores",
	"ssl.crl.location",
	"ssl.certificate.location", "ssl.certificate.pem",
	"ssl.key.location", "ssl.key.password", "ssl.key.pem",
	"ssl.keystore.location", "ssl.keystore.password",
	"ssl.cipher.suites", "ssl.curves.list", "ssl.sigalgs.list",
	"ssl.endpoint.identification.algorithm",
	"enable.ssl.certificate.verification",
	"sasl.mechanisms", "sasl.mechanism", "sasl.username", "sasl.password",
	"sasl.oauthbearer.config", "enable.sasl.oauthbearer.unsecure.jwt",
	"sasl.oauthbearer.method", "sasl.oauthbearer.client.id",
	"sasl.oauthbearer.client.secret", "sasl.oauthbearer.scope",
	"sasl.oauthbearer.extensions", "sasl.oauthbearer.token.endpoint.url",
	/* the client */
	"client.id", "client.rack", "debug", "log_level", "log.connection.close",
	"message.max.bytes", "message.copy.max.bytes", "receive.message.max.bytes",
	"max.in.flight.requests.per.connection", "max.in.flight",
	"request.timeout.ms",
	"topic.metadata.refresh.interval.ms", "metadata.max.age.ms",
	"topic.metadata.refresh.fast.interval.ms", "topic.metadata.refresh.sparse",
	"topic.metadata.propagation.max.ms", "allow.auto.create.topics",
	"socket.timeout.ms", "socket.send.buffer.bytes",
	"socket.receive.buffer.bytes", "socket.keepalive.enable",
	"socket.nagle.disable", "socket.max.fails",
	"socket.connection.setup.timeout.ms", "connections.max.idle.ms",
	"broker.address.ttl", "broker.address.family",
	"reconnect.backoff.ms", "reconnect.backoff.max.ms",
	"api.version.request", "api.version.request.timeout.ms",
	"api.version.fallback.ms", "broker.version.fallback",
	/* the producer */
	"linger.ms", "queue.buffering.max.ms", "queue.buffering.max.messages",
	"queue.buffering.max.kbytes", "queue.buffering.backpressure.threshold",
	"batch.num.messages", "batch.size", "compression.type",
	"compression.codec", "compression.level", "partitioner",
	"sticky.partitioning.linger.ms", "retries", "message.send.max.retries",
	"retry.backoff.ms",
	/* the consumer */
	"session.timeout.ms", "heartbeat.interval.ms", "max.poll.interval.ms",
	"coordinator.query.interval.ms", "partition.assignment.strategy",
	"isolation.level", "check.crcs",
	"queued.min.messages", "queued.max.messages.kbytes",
	"fetch.wait.max.ms", "fetch.message.max.bytes",
	"max.partition.fetch.bytes", "fetch.max.bytes", "fetch.min.bytes",
	"fetch.error.backoff.ms",
	NULL
};

/*
 * Prefixes of properties that would load code into the server, run a
 * command there or write files: refused with a reason of their own.
 */
static const char *const dangerous_prefixes[] = {
	"plugin.",					/* plugin.library.paths: shared objects */
	"interceptors",
	"ssl.providers",			/* OpenSSL providers: shared objects */
	"ssl.engine.",				/* OpenSSL engines: shared objects */
	"ssl_engine",
	"sasl.kerberos.",			/* the kinit command and what is pasted in it */
	"offset.store.",			/* offset files */
	"internal.",
	NULL
};

/* The SASL mechanisms that run nothing: GSSAPI runs the kinit command. */
#define ALLOWED_SASL_MECHANISMS "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER"

/* The longest line of evbus.kafka_config_file (a PEM chain fits). */
#define MAX_LINE_BYTES (1024 * 1024)

/* Does the property name suggest its value is a secret? */
static bool
property_is_sensitive(const char *name)
{
	return strstr(name, "password") || strstr(name, "secret") ||
		strstr(name, "key") || strstr(name, "token") ||
		strstr(name, "jaas") || strstr(name, "credential") ||
		strstr(name, "oauthbearer") || strstr(name, "sasl.username");
}

/*
 * evbus_kafka_conf_set --- set one property, or ERROR naming the property.
 *
 * librdkafka's error text quotes the value; for properties that may hold
 * secrets, it is left out.
 */
void
evbus_kafka_conf_set(rd_kafka_conf_t *conf, const char *name,
					 const char *value)
{
	char		errstr[512];

	if (rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)) !=
		RD_KAFKA_CONF_OK)
	{
		if (property_is_sensitive(name))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid value for Kafka property \"%s\"", name)));
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid Kafka property \"%s\"", name),
					 errdetail("%s", errstr)));
	}
}

static char *
trim(char *s)
{
	char	   *end;

	while (isspace((unsigned char) *s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char) end[-1]))
		*--end = '\0';
	return s;
}

/*
 * split_property --- one line of evbus.kafka_config_file, split in place
 * into a trimmed property name and value.  Returns false for a blank or
 * comment line (starting with '#' or '!', as in Java properties files);
 * *value is NULL when the line has no '='.
 */
static bool
split_property(char *line, char **key, char **value)
{
	char	   *eq;

	*key = trim(line);
	*value = NULL;
	if (**key == '\0' || **key == '#' || **key == '!')
		return false;
	eq = strchr(*key, '=');
	if (eq != NULL)
	{
		*eq = '\0';
		*key = trim(*key);
		*value = trim(eq + 1);
	}
	return true;
}

/*
 * A reader of whole lines of evbus.kafka_config_file, however long (up to
 * MAX_LINE_BYTES): a line read in pieces of a fixed buffer once made the
 * tail of a long secret a line of its own, whose "property name" was then
 * logged (test 252_kafka_conf_long_line.pl).  Every buffer a line has
 * been in is zeroed before it is freed, so no secret lingers in the
 * worker's memory.
 */
typedef struct LineReader
{
	FILE	   *file;
	char	   *buf;
	size_t		cap;
	int			lineno;
} LineReader;

typedef enum LineResult
{
	LINE_OK,
	LINE_EOF,
	LINE_TOO_LONG				/* the rest of the line was skipped */
} LineResult;

static LineReader *
reader_open(FILE *file)
{
	LineReader *r = palloc0(sizeof(LineReader));

	r->file = file;
	r->cap = 1024;
	r->buf = palloc(r->cap);
	return r;
}

/* Zero and free the buffer, close the file. */
static void
reader_close(LineReader *r)
{
	explicit_bzero(r->buf, r->cap);
	pfree(r->buf);
	FreeFile(r->file);
	pfree(r);
}

/*
 * reader_next --- the next line, without its newline, NUL-terminated in
 * r->buf; r->lineno counts it.
 */
static LineResult
reader_next(LineReader *r)
{
	size_t		len = 0;
	int			c;

	while ((c = getc(r->file)) != EOF && c != '\n')
	{
		if (len >= MAX_LINE_BYTES)
		{
			while ((c = getc(r->file)) != EOF && c != '\n')
				;
			r->buf[len] = '\0';
			r->lineno++;
			return LINE_TOO_LONG;
		}
		if (len + 1 >= r->cap)
		{
			char	   *bigger = palloc(r->cap * 2);

			memcpy(bigger, r->buf, len);
			explicit_bzero(r->buf, r->cap);
			pfree(r->buf);
			r->buf = bigger;
			r->cap *= 2;
		}
		r->buf[len++] = (char) c;
	}
	r->buf[len] = '\0';
	if (c == EOF && len == 0)
		return LINE_EOF;
	r->lineno++;
	return LINE_OK;
}

/* Is name on the allow-list? */
static bool
property_allowed(const char *name)
{
	const char *const *p;

	for (p = allowed_properties; *p; p++)
		if (strcmp(name, *p) == 0)
			return true;
	return false;
}

/* Would the property load code, run a command or write a file? */
static bool
property_dangerous(const char *name)
{
	const char *const *p;

	for (p = dangerous_prefixes; *p; p++)
		if (strncmp(name, *p, strlen(*p)) == 0)
			return true;
	return false;
}

/* Is this sasl.mechanisms value one that runs nothing? */
static bool
sasl_mechanism_allowed(const char *value)
{
	return strcmp(value, "PLAIN") == 0 || strcmp(value, "SCRAM-SHA-256") == 0 ||
		strcmp(value, "SCRAM-SHA-512") == 0 || strcmp(value, "OAUTHBEARER") == 0;
}

/*
 * check_property --- ERROR unless the property of a line may be set: on
 * the allow-list, and for sasl.mechanisms a mechanism that runs nothing.
 * The error names the property and the line, never the value.
 */
static void
check_property(const char *key, const char *value, const char *path, int lineno)
{
	/* a name that no property has is shown by its first 64 bytes at most */
	int			shown = pg_mbcliplen(key, strlen(key), 64);

	if (property_dangerous(key))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("Kafka property \"%.*s\" is not allowed in evbus.kafka_config_file (line %d of \"%s\")",
						shown, key, lineno, path),
				 errdetail("librdkafka would load code, run a command or write a file inside the database server with it."),
				 errhint("Properties that load code or run a command inside the database server are refused; remove the line.")));
	if (!property_allowed(key))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("Kafka property \"%.*s\" is not allowed in evbus.kafka_config_file (line %d of \"%s\")",
						shown, key, lineno, path),
				 errdetail("evbus accepts only the librdkafka properties of its allow-list; it sets the ones its guarantees rest on itself."),
				 errhint("Check the spelling; the allowed properties are listed under Configuration in evbus's README.")));
	if ((strcmp(key, "sasl.mechanisms") == 0 || strcmp(key, "sasl.mechanism") == 0) &&
		!sasl_mechanism_allowed(value))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("Kafka property \"%s\" must be " ALLOWED_SASL_MECHANISMS " in evbus.kafka_config_file (line %d of \"%s\")",
						key, lineno, path),
				 errhint("GSSAPI is refused: librdkafka runs the kinit command for it inside the database server.")));
}

/*
 * conf_set_line --- set a property of the file, or ERROR naming the line
 * and the property.  librdkafka's explanation is kept for properties that
 * hold no secret, with the value masked out of it.
 */
static void
conf_set_line(rd_kafka_conf_t *conf, const char *key, const char *value,
			  const char *path, int lineno)
{
	char		errstr[512];
	StringInfoData detail;
	const char *p;
	size_t		vlen = strlen(value);

	if (rd_kafka_conf_set(conf, key, value, errstr, sizeof(errstr)) == RD_KAFKA_CONF_OK)
		return;
	initStringInfo(&detail);
	if (!property_is_sensitive(key))
	{
		for (p = errstr; *p; p++)
		{
			if (vlen > 0 && strncmp(p, value, vlen) == 0)
			{
				appendStringInfoString(&detail, "(the value)");
				p += vlen - 1;
			}
			else
				appendStringInfoChar(&detail, *p);
		}
	}
	explicit_bzero(errstr, sizeof(errstr));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid value for Kafka property \"%s\" in evbus.kafka_config_file (line %d of \"%s\")",
					key, lineno, path),
			 detail.len > 0 ? errdetail("%s", detail.data) : 0));
}

/*
 * apply_config_file --- apply the property=value lines of
 * evbus.kafka_config_file, each checked by check_property first.
 *
 * The file is closed, and the buffer that held its lines zeroed, however
 * this ends.
 */
static void
apply_config_file(rd_kafka_conf_t *conf, const char *path)
{
	FILE	   *file;
	LineReader *r;

	file = AllocateFile(path, "r");
	if (file == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open evbus.kafka_config_file \"%s\": %m", path)));
	r = reader_open(file);
	PG_TRY();
	{
		LineResult	result;

		while ((result = reader_next(r)) != LINE_EOF)
		{
			char	   *key;
			char	   *value;

			if (result == LINE_TOO_LONG)
				ereport(ERROR,
						(errcode(ERRCODE_CONFIG_FILE_ERROR),
						 errmsg("line %d of evbus.kafka_config_file \"%s\" is longer than %d bytes",
								r->lineno, path, MAX_LINE_BYTES)));
			if (!split_property(r->buf, &key, &value))
				continue;
			if (value == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_CONFIG_FILE_ERROR),
						 errmsg("syntax error in evbus.kafka_config_file \"%s\", line %d", path, r->lineno),
						 errdetail("Each line must have the form property=value.")));
			check_property(key, value, path, r->lineno);
			conf_set_line(conf, key, value, path, r->lineno);
		}
	}
	PG_FINALLY();
	{
		reader_close(r);
	}
	PG_END_TRY();
}

/*
 * check_sasl --- with SASL, librdkafka's default mechanism is GSSAPI,
 * which runs the kinit command inside the server: a file that asks for
 * SASL must name a mechanism that runs nothing.
 */
static void
check_sasl(rd_kafka_conf_t *conf)
{
	char		protocol[64];
	char		mechanism[64];
	size_t		size = sizeof(protocol);

	if (rd_kafka_conf_get(conf, "security.protocol", protocol, &size) != RD_KAFKA_CONF_OK ||
		pg_strncasecmp(protocol, "sasl", 4) != 0)
		return;
	size = sizeof(mechanism);
	if (rd_kafka_conf_get(conf, "sasl.mechanisms", mechanism, &size) == RD_KAFKA_CONF_OK &&
		sasl_mechanism_allowed(mechanism))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_CONFIG_FILE_ERROR),
			 errmsg("SASL with the GSSAPI mechanism is not allowed in evbus.kafka_config_file"),
			 errdetail("librdkafka uses GSSAPI when sasl.mechanisms is not set, and runs the kinit command for it inside the database server."),
			 errhint("Set sasl.mechanisms to " ALLOWED_SASL_MECHANISMS ".")));
}

/*
 * file_identity --- a hash of which file is at path and of its last change
 * (device, inode, size, modification time), or of the error that stat
 * gives.  A certificate replaced by another (rename) or rewritten changes
 * it; reading the file itself is left to librdkafka.
 */
static uint64
file_identity(const char *path)
{
	struct stat st;
	uint64		parts[5];

	if (stat(path, &st) != 0)
		return (uint64) errno;
	parts[0] = (uint64) st.st_dev;
	parts[1] = (uint64) st.st_ino;
	parts[2] = (uint64) st.st_size;
	parts[3] = (uint64) st.st_mtim.tv_sec;
	parts[4] = (uint64) st.st_mtim.tv_nsec;
	return hash_bytes_extended((const unsigned char *) parts, sizeof(parts), 3);
}

/*
 * evbus_kafka_conf_fingerprint --- a hash of what a client built now by
 * evbus_kafka_conf_new would be made of: the bootstrap list, the path of
 * evbus.kafka_config_file, the file's bytes (a changed password, or a file
 * that became unreadable, changes it), and which file each "*.location"
 * property names and when that changed (a CA certificate, a keystore or a
 * key replaced under the same name).  A worker compares it after a
 * configuration reload and rebuilds its clients when it differs, so that
 * editing the file, or rotating a certificate, and reloading is enough.
 * Never errors; the bytes read are zeroed after use.
 */
uint64
evbus_kafka_conf_fingerprint(const char *brokers)
{
	const char *path = evbus_kafka_config_file ? evbus_kafka_config_file : "";
	uint64		h = hash_bytes_extended((const unsigned char *) brokers,
										strlen(brokers), 0);

	h = hash_combine64(h, hash_bytes_extended((const unsigned char *) path,
											  strlen(path), 1));
	if (path[0] != '\0')
	{
		FILE	   *file = AllocateFile(path, "r");
		LineReader *r;

		if (file == NULL)
			return hash_combine64(h, (uint64) errno);
		r = reader_open(file);
		while (reader_next(r) != LINE_EOF)
		{
			char	   *key;
			char	   *value;
			size_t		keylen;

			/* a line over the limit counts by its first MAX_LINE_BYTES */
			h = hash_combine64(h, hash_bytes_extended((const unsigned char *) r->buf,
													  strlen(r->buf), 2));
			if (split_property(r->buf, &key, &value) && value != NULL &&
				(keylen = strlen(key)) > strlen(".location") &&
				strcmp(key + keylen - strlen(".location"), ".location") == 0)
				h = hash_combine64(h, file_identity(value));
		}
		reader_close(r);
	}
	return h;
}

/*
 * evbus_kafka_conf_new --- a configuration for one client of evbus.
 *
 * brokers is a bootstrap list; client_id names the client in broker logs.
 * defaults (name, value pairs ending with NULL) may be overridden by the
 * properties file; forced ones may not, as evbus's guarantees rest on them.
 * Logs and errors are routed to the main queue so that callbacks run in
 * the worker's thread only.
 */
rd_kafka_conf_t *
evbus_kafka_conf_new(const char *brokers, const char *client_id,
					 const char *const *defaults, const char *const *forced)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();

	PG_TRY();
	{
		const char *const *p;

		evbus_kafka_conf_set(conf, "client.id", client_id);
		evbus_kafka_conf_set(conf, "log.connection.close", "false");
		for (p = defaults; p && *p; p += 2)
			evbus_kafka_conf_set(conf, p[0], p[1]);

		if (evbus_kafka_config_file && evbus_kafka_config_file[0] != '\0')
			apply_config_file(conf, evbus_kafka_config_file);
		check_sasl(conf);

		for (p = forced; p && *p; p += 2)
			evbus_kafka_conf_set(conf, p[0], p[1]);
		evbus_kafka_conf_set(conf, "log.queue", "true");
		evbus_kafka_conf_set(conf, "bootstrap.servers", brokers);
	}
	PG_CATCH();
	{
		rd_kafka_conf_destroy(conf);
		PG_RE_THROW();
	}
	PG_END_TRY();

	rd_kafka_conf_set_log_cb(conf, evbus_kafka_log_cb);
	return conf;
}
