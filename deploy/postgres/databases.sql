-- One database per service (compose.yaml); each service's migrations create its tables.
CREATE DATABASE identity;
CREATE DATABASE content;
CREATE DATABASE gateway;
