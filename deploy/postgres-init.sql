-- One database per service: each has its own migrations table and outbox.
CREATE DATABASE trellis_user;
CREATE DATABASE trellis_auth;
CREATE DATABASE trellis_notification;
