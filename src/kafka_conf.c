/*-------------------------------------------------------------------------
 *
 * kafka_conf.c
 *	  Build a librdkafka configuration: evbus's defaults, then the
 *	  properties of evbus.kafka_config_file, then what evbus's guarantees
 *	  depend on, and the bootstrap servers.
 *
 * The properties file is where TLS and SASL settings, and their secrets,
 * live: it is read by the worker only, and neither its values nor
 * librdkafka's messages about them ever reach a log line.  Properties that
 * load code or run commands are refused (DESIGN.md section 7).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <sys/stat.h>

#include "common/hashfn.h"
#include "storage/fd.h"

#include "evbus.h"
#include "kafka.h"

/* Properties that would load a library or run a command in the server. */
static const char *const refused_properties[] = {
	"plugin.library.paths",
	"sasl.kerberos.kinit.cmd",
	"ssl.engine.location",
	NULL
};

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
 * apply_config_file --- apply the property=value lines of
 * evbus.kafka_config_file.
 *
 * The buffer holding a line is zeroed after use so no secret lingers in
 * the worker's memory.
 */
static void
apply_config_file(rd_kafka_conf_t *conf, const char *path)
{
	FILE	   *file;
	char		line[8192];
	int			lineno = 0;

	file = AllocateFile(path, "r");
	if (file == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open evbus.kafka_config_file \"%s\": %m", path)));

	while (fgets(line, sizeof(line), file) != NULL)
	{
		char	   *key;
		char	   *value;
		const char *const *refused;

		lineno++;
		if (!split_property(line, &key, &value))
			continue;
		if (value == NULL)
		{
			explicit_bzero(line, sizeof(line));
			FreeFile(file);
			ereport(ERROR,
					(errcode(ERRCODE_CONFIG_FILE_ERROR),
					 errmsg("syntax error in evbus.kafka_config_file \"%s\", line %d", path, lineno),
					 errdetail("Each line must have the form property=value.")));
		}
		for (refused = refused_properties; *refused; refused++)
		{
			if (strcmp(key, *refused) == 0)
			{
				explicit_bzero(line, sizeof(line));
				FreeFile(file);
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("Kafka property \"%s\" is not allowed in evbus.kafka_config_file", *refused),
						 errdetail("It would load code or run a command inside the database server (line %d of \"%s\").",
								   lineno, path)));
			}
		}
		PG_TRY();
		{
			evbus_kafka_conf_set(conf, key, value);
		}
		PG_FINALLY();
		{
			explicit_bzero(line, sizeof(line));
		}
		PG_END_TRY();
	}
	FreeFile(file);
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
		char		line[8192];

		if (file == NULL)
			return hash_combine64(h, (uint64) errno);
		while (fgets(line, sizeof(line), file) != NULL)
		{
			char	   *key;
			char	   *value;
			size_t		keylen;

			h = hash_combine64(h, hash_bytes_extended((const unsigned char *) line,
													  strlen(line), 2));
			if (split_property(line, &key, &value) && value != NULL &&
				(keylen = strlen(key)) > strlen(".location") &&
				strcmp(key + keylen - strlen(".location"), ".location") == 0)
				h = hash_combine64(h, file_identity(value));
		}
		explicit_bzero(line, sizeof(line));
		FreeFile(file);
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
