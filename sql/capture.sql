-- evbus.capture(): a row trigger raising a domain event per changed row
CREATE TABLE customers (id int PRIMARY KEY, name text, vip boolean DEFAULT false);
CREATE FUNCTION customer_changed(payload jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('change', payload) $$;
SELECT evbus.register_converter('CustomerChangedDomainEvent', 'CustomerChanged',
                                'customer_changed(jsonb)');
CREATE TRIGGER customers_capture
	AFTER INSERT OR UPDATE OR DELETE ON customers
	FOR EACH ROW EXECUTE FUNCTION evbus.capture('CustomerChangedDomainEvent', 'id');

INSERT INTO customers VALUES (1, 'Ada'), (2, 'Brian');
UPDATE customers SET vip = true WHERE id = 1;
DELETE FROM customers WHERE id = 2;

-- INSERT: the new row; UPDATE: {"old", "new"}; DELETE: the old row;
-- the key is the id column
SELECT integration_event, event_key, payload->'change' AS change, domain_event
  FROM evbus.outbox ORDER BY id;

-- a rolled back change raises nothing
BEGIN;
INSERT INTO customers VALUES (3, 'Carla');
ROLLBACK;
SELECT count(*) AS events FROM evbus.outbox;

-- without a key column the message id is the key (event_key NULL)
CREATE TABLE notes (body text);
SELECT evbus.register_converter('NoteWritten', 'NoteWrittenIntegration', 'customer_changed(jsonb)');
CREATE TRIGGER notes_capture AFTER INSERT ON notes
	FOR EACH ROW EXECUTE FUNCTION evbus.capture('NoteWritten');
INSERT INTO notes VALUES ('hello');
SELECT event_key, payload FROM evbus.outbox WHERE integration_event = 'NoteWrittenIntegration';

-- misuse is refused clearly
CREATE TRIGGER notes_before BEFORE INSERT ON notes
	FOR EACH ROW EXECUTE FUNCTION evbus.capture('NoteWritten');
INSERT INTO notes VALUES ('before');
DROP TRIGGER notes_before ON notes;

CREATE TRIGGER notes_statement AFTER INSERT ON notes
	FOR EACH STATEMENT EXECUTE FUNCTION evbus.capture('NoteWritten');
INSERT INTO notes VALUES ('statement');
DROP TRIGGER notes_statement ON notes;

CREATE TRIGGER notes_noargs AFTER INSERT ON notes
	FOR EACH ROW EXECUTE FUNCTION evbus.capture();
INSERT INTO notes VALUES ('no args');
DROP TRIGGER notes_noargs ON notes;

CREATE TRIGGER notes_badkey AFTER INSERT ON notes
	FOR EACH ROW EXECUTE FUNCTION evbus.capture('NoteWritten', 'no_such_column');
INSERT INTO notes VALUES ('bad key');
DROP TRIGGER notes_badkey ON notes;

CREATE TRIGGER notes_unknown AFTER INSERT ON notes
	FOR EACH ROW EXECUTE FUNCTION evbus.capture('NobodyConvertsThis');
INSERT INTO notes VALUES ('unknown');
DROP TRIGGER notes_unknown ON notes;

SELECT evbus.capture();

SELECT count(*) AS events FROM evbus.outbox;
DELETE FROM evbus.outbox_0;
DELETE FROM evbus.outbox_1;
