'use strict';
// Device registration with the official Node device SDK over AMQP 1.0 on 5671 (azure-iot-provisioning-device-amqp Amqp)
// against a running dpsd. The scenarios are in lib/device-suite.js.

require('./lib/device-suite').defineDeviceSuite('amqp');
