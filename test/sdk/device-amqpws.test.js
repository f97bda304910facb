'use strict';
// Device registration with the official Node device SDK over AMQP over WebSockets on 443 (azure-iot-provisioning-device-amqp AmqpWs)
// against a running dpsd. The scenarios are in lib/device-suite.js.

require('./lib/device-suite').defineDeviceSuite('amqpws');
