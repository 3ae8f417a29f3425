-- DBeaver (pgjdbc) connect and navigator queries, quoted from
-- datafusion-contrib/datafusion-postgres:datafusion-postgres/tests/dbeaver.rs (dpproxy research notes c.7).
-- SET statements are answered by dpproxy and left out here; the keyword list is shortened as in the notes.
-- The captured size query compared relnamespace with 'public' (datafusion-postgres accepts
-- that; PostgreSQL does not): it is written with ::regnamespace, as DBeaver means it.
-- statement
SELECT current_schema(),session_user
-- statement
SELECT n.oid,n.*,d.description FROM pg_catalog.pg_namespace n LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=n.oid AND d.objsubid=0 AND d.classoid='pg_namespace'::regclass ORDER BY nspname
-- statement
SHOW search_path
-- statement
SELECT db.oid,db.* FROM pg_catalog.pg_database db WHERE datname='postgres'
-- statement
SELECT * FROM pg_catalog.pg_settings where name='standard_conforming_strings'
-- statement
SELECT string_agg(word, ',' ) from pg_catalog.pg_get_keywords() where word <> ALL ('{a,abs,absolute,...}'::text[])
-- statement
SELECT version()
-- statement
SELECT * FROM pg_catalog.pg_enum WHERE 1<>1 LIMIT 1
-- statement
SELECT reltype FROM pg_catalog.pg_class WHERE 1<>1 LIMIT 1
-- statement
SELECT t.oid,t.*,c.relkind,format_type(nullif(t.typbasetype, 0), t.typtypmod) as base_type_name, d.description FROM pg_catalog.pg_type t LEFT OUTER JOIN pg_catalog.pg_type et ON et.oid=t.typelem LEFT OUTER JOIN pg_catalog.pg_class c ON c.oid=t.typrelid LEFT OUTER JOIN pg_catalog.pg_description d ON t.oid=d.objoid WHERE t.typname IS NOT NULL AND (c.relkind IS NULL OR c.relkind = 'c') AND (et.typcategory IS NULL OR et.typcategory <> 'C')
-- statement
SELECT c.oid,c.*,d.description,pg_catalog.pg_get_expr(c.relpartbound, c.oid) as partition_expr,  pg_catalog.pg_get_partkeydef(c.oid) as partition_key FROM pg_catalog.pg_class c LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=c.oid AND d.objsubid=0 AND d.classoid='pg_class'::regclass WHERE c.relnamespace=11 AND c.relkind not in ('i','I','c')
-- statement
select c.oid,pg_catalog.pg_total_relation_size(c.oid) as total_rel_size,pg_catalog.pg_relation_size(c.oid) as rel_size FROM pg_class c WHERE c.relnamespace='public'::regnamespace
